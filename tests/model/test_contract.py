"""The checkpoint's input contract: validation, storage, legacy reading, and the torch-free reader."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointMeta, read_meta, save_checkpoint
from model.config import CLDCAConfig, PreprocessConfig
from model.contract import THREE_PHASES, InputContract
from model.network import CLDCA
from model.predictor import Predictor
from model.preprocess import preprocess_volume
from model.schema import FeatureSchema
from tace.model_contract import LEGACY, ContractError, ModelInputContract, read_input_contract


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phases": ("arterial", "venous", "delayed")}, r"phases: unknown phase\(s\) venous"),
        ({"phases": ("arterial", "portal_venous")}, "phases: one phase .* or 3 phases .* got 2"),
        ({"phases": ("any", "arterial", "delayed")}, "phases: 'any' stands alone"),
        ({"phases": ("arterial", "arterial", "delayed")}, "phases: a phase appears twice"),
        ({"phases": "arterial"}, "phases must be a sequence of phase names"),
        ({"slice_thickness_mm": (5.0, 1.0)}, "slice_thickness_mm must be 0 <= low <= high"),
        ({"slice_thickness_mm": (-1.0, 1.0)}, "slice_thickness_mm must be 0 <= low <= high"),
        ({"min_slices": 0}, "min_slices must be an integer of at least 1"),
    ],
)
def test_contract_is_validated_eagerly_naming_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InputContract(**kwargs)


def test_contract_round_trips_as_strict_json() -> None:
    three = InputContract(THREE_PHASES, (1.0, 5.0), 12)
    assert InputContract.from_dict(json.loads(json.dumps(three.to_dict(), allow_nan=False))) == three
    legacy = InputContract.legacy()
    assert legacy.to_dict() == {"phases": ["any"], "slice_thickness_mm": [0.0, None], "min_slices": 1}
    assert InputContract.from_dict(legacy.to_dict()).slice_thickness_mm == (0.0, math.inf)
    with pytest.raises(ValueError, match="unknown input contract keys: channels"):
        InputContract.from_dict({"channels": 3})


def test_config_carries_the_phase_channels_and_old_configs_read_as_any_phase() -> None:
    config = CLDCAConfig(phases=THREE_PHASES)
    assert CLDCAConfig.from_dict(config.to_dict()).phases == THREE_PHASES
    old = config.to_dict()
    del old["phases"]
    assert CLDCAConfig.from_dict(old).phases == ("any",)
    with pytest.raises(ValueError, match="phases: unknown phase"):
        CLDCAConfig(phases=("late",))


def _meta(config: CLDCAConfig, contract: InputContract) -> CheckpointMeta:
    schema = FeatureSchema.load()
    return CheckpointMeta(
        version="t",
        config=config,
        preprocess=PreprocessConfig(image_size=16),
        schema=schema,
        normalization=schema.fit([{}]),
        input_contract=contract,
    )


def test_meta_refuses_a_contract_whose_phases_differ_from_the_config() -> None:
    with pytest.raises(ValueError, match=r"input_contract.phases \('any',\) differ from config.phases"):
        _meta(CLDCAConfig(phases=THREE_PHASES), InputContract.legacy())


def _small_checkpoint(path: Path, phases: tuple[str, ...], contract: InputContract) -> Path:
    schema = FeatureSchema.load()
    config = CLDCAConfig(clinical_inputs=len(schema.columns), freeze_backbone=True, phases=phases)
    torch.manual_seed(0)
    save_checkpoint(path, CLDCA(config).eval(), _meta(config, contract))
    return path


def _strip_contract(source: Path, target: Path) -> None:
    """The checkpoint as it was written before contracts existed."""
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    meta = json.loads(header["__metadata__"]["tace_checkpoint"])
    del meta["input_contract"], meta["config"]["phases"]
    header["__metadata__"]["tace_checkpoint"] = json.dumps(meta)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def test_contract_is_stored_in_the_checkpoint_and_read_alike_without_torch(tmp_path: Path) -> None:
    contract = InputContract(THREE_PHASES, (1.0, 5.0), 12)
    path = _small_checkpoint(tmp_path / "three.safetensors", THREE_PHASES, contract)
    assert read_meta(path).input_contract == contract
    assert read_input_contract(path) == ModelInputContract(THREE_PHASES, (1.0, 5.0), 12)
    legacy = tmp_path / "legacy.safetensors"
    _strip_contract(path, legacy)
    assert read_meta(legacy).input_contract == InputContract.legacy()
    assert read_meta(legacy).config.phases == ("any",)
    assert read_input_contract(legacy) == LEGACY
    assert LEGACY.required_phases == () and LEGACY.accepts_thickness(0.6)
    assert read_input_contract(path).required_phases == THREE_PHASES
    assert not read_input_contract(path).accepts_thickness(0.6)
    probe = (
        "import sys; from pathlib import Path; from tace.model_contract import read_input_contract; "
        f"c = read_input_contract(Path({str(path)!r})); print(c.phases); "
        "print(sorted(m for m in ('torch', 'model', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(THREE_PHASES), "[]"]


def test_torch_free_reader_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01")
    with pytest.raises(ContractError, match="short.safetensors: not a safetensors checkpoint"):
        read_input_contract(short)
    with pytest.raises(ContractError, match="absent.safetensors: unreadable"):
        read_input_contract(tmp_path / "absent.safetensors")


def test_three_phases_become_the_three_channels_in_declared_order() -> None:
    config = PreprocessConfig(window_center=60, window_width=400, image_size=8)
    volume = torch.stack(
        [torch.full((5, 8, 8), hu) for hu in (-140.0, 60.0, 260.0)], dim=1
    )  # window low, centre and high: 0, 0.5 and 1 after windowing
    out = preprocess_volume(volume, config, THREE_PHASES)
    assert out.shape == (5, 3, 8, 8)
    assert [float(out[:, c].mean()) for c in range(3)] == [0.0, 0.5, 1.0]
    single = preprocess_volume(torch.full((5, 8, 8), 60.0), config, ("portal_venous",))
    assert single.shape == (5, 3, 8, 8) and float(single.min()) == float(single.max()) == 0.5


def test_a_volume_that_does_not_fit_the_phases_is_a_clear_error() -> None:
    config = PreprocessConfig(image_size=8)
    with pytest.raises(
        ValueError, match=r"shape \(5, 8, 8\); this model reads 3 phases .* \(slices, 3, rows"
    ):
        preprocess_volume(torch.zeros(5, 8, 8), config, THREE_PHASES)
    with pytest.raises(ValueError, match=r"shape \(5, 2, 8, 8\); this model reads 3 phases"):
        preprocess_volume(torch.zeros(5, 2, 8, 8), config, THREE_PHASES)
    with pytest.raises(ValueError, match=r"shape \(5, 3, 8, 8\); a single-phase model \(any\) takes"):
        preprocess_volume(torch.zeros(5, 3, 8, 8), config)


def test_predictor_reads_a_three_phase_volume_and_refuses_one_phase(tmp_path: Path) -> None:
    contract = InputContract(THREE_PHASES, (0.0, math.inf), 1)
    path = _small_checkpoint(tmp_path / "three.safetensors", THREE_PHASES, contract)
    predictor = Predictor.load(path, device="cpu")
    rng = np.random.default_rng(0)
    volume = rng.normal(60, 30, size=(4, 3, 16, 16)).astype(np.float32)
    result = predictor.predict(volume, {})
    assert 0.0 <= result.probability <= 1.0 and result.slices_used == 4
    swapped = predictor.predict(volume[:, ::-1].copy(), {})
    assert swapped.probability != result.probability
    with pytest.raises(ValueError, match=r"shape \(4, 16, 16\); this model reads 3 phases"):
        predictor.predict(volume[:, 0], {})


def test_end_to_end_training_samples_keep_one_channel_per_phase(tmp_path: Path) -> None:
    from model.data import load_cached_volume, read_manifest
    from model.synthetic import make_phase_cohort, write_cohort
    from model.training import initial_backbone_state, prepare_samples, score

    schema = FeatureSchema.load()
    manifest = write_cohort(make_phase_cohort(2, seed=0, slices=3, size=16), tmp_path, schema)
    state = initial_backbone_state(0)
    for phases, channels in ((THREE_PHASES, 3), (("arterial",), 1)):
        cases = read_manifest(manifest, schema, phases=phases).cases
        samples = prepare_samples(
            cases,
            load_cached_volume,
            PreprocessConfig(image_size=16),
            frozen_backbone=False,
            backbone_state=state,
            device=torch.device("cpu"),
            phases=phases,
        )
        assert samples[0].slices is not None and samples[0].slices.shape == (3, channels, 16, 16)
        assert samples[0].slice_count == 3
        config = CLDCAConfig(clinical_inputs=len(schema.columns), phases=phases)
        model = CLDCA(config)
        scores = score(model, samples, schema, schema.fit(s.clinical for s in samples), torch.device("cpu"))
        assert scores.shape == (2,)
