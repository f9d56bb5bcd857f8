from __future__ import annotations

import numpy as np
import pytest

from model.schema import FeatureKind, FeatureSchema, SchemaError


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return FeatureSchema.load()


def test_the_paper_schema_has_43_features_with_units_and_ranges(schema: FeatureSchema) -> None:
    assert len(schema.features) == 43 and len(schema.columns) == 43
    groups = {f.group for f in schema.features}
    assert {
        "history",
        "staging",
        "blood_count",
        "liver_panel",
        "renal_panel",
        "lipids",
        "electrolytes",
        "coagulation",
        "body",
        "vitals",
        "demographics",
    } <= groups
    for feature in schema.features:
        if feature.kind is FeatureKind.continuous:
            assert feature.unit and feature.valid_range, feature.name
    assert schema.feature("bclc_stage").categories == ("0", "A", "B", "C", "D")
    assert schema.feature("hbv_infection").window_days is None


def test_missing_values_are_imputed_with_the_training_median_and_flagged(schema: FeatureSchema) -> None:
    normalization = schema.fit([{"albumin": 3.0}, {"albumin": 4.0}, {"albumin": 5.0}])
    encoded = schema.encode({"albumin": None, "sex": "M"}, normalization)
    index = schema.columns.index("albumin")
    assert encoded.missing[index]
    assert encoded.values[index] == pytest.approx(0.5)
    assert "albumin" in encoded.missing_features and "sex" not in encoded.missing_features
    assert not encoded.missing[schema.columns.index("sex")]
    with_mask = encoded.network_input(feed_missing_mask=True)
    assert with_mask.shape == (86,) and with_mask[43 + index] == 1.0


def test_min_max_scaling_is_clamped_to_the_training_range(schema: FeatureSchema) -> None:
    normalization = schema.fit([{"sodium": 130}, {"sodium": 150}])
    index = schema.columns.index("sodium")
    assert schema.encode({"sodium": 140}, normalization).values[index] == pytest.approx(0.5)
    assert schema.encode({"sodium": 170}, normalization).values[index] == 1.0


def test_categories_yes_no_and_log_scale(schema: FeatureSchema) -> None:
    assert schema.feature("sex").to_number("F") == 0.0
    assert schema.feature("ascites").to_number("mild") == 1.0
    assert schema.feature("bclc_stage").to_number("C") == 3.0
    assert schema.feature("cirrhosis").to_number("yes") == 1.0
    normalization = schema.fit([{"afp": 9}, {"afp": 999}])
    afp = schema.encode({"afp": 99}, normalization).values[schema.columns.index("afp")]
    assert afp == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("albumin", "12", "'albumin': 12 g/dL is outside the valid range 0.5..7"),
        ("wbc", "lots", "'wbc': 'lots' is not a number"),
        ("bclc_stage", "E", "'bclc_stage': 'E' is not one of"),
        ("cirrhosis", "maybe", "'cirrhosis': 'maybe' is not a yes/no value"),
    ],
)
def test_bad_values_name_the_feature(schema: FeatureSchema, name: str, value: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(".", r"\.")):
        schema.feature(name).to_number(value)


def test_nominal_features_are_one_hot() -> None:
    schema = FeatureSchema.from_dict(
        {
            "name": "t",
            "features": [
                {"name": "site", "kind": "nominal", "categories": ["a", "b", "c"]},
                {"name": "x", "kind": "continuous", "unit": "1", "range": [0, 10]},
            ],
        }
    )
    assert schema.columns == ["site=a", "site=b", "site=c", "x"]
    normalization = schema.fit([{"site": "a", "x": 0}, {"site": "b", "x": 10}, {"site": "c", "x": 5}])
    np.testing.assert_array_equal(schema.encode({"site": "b", "x": 5}, normalization).values, [0, 1, 0, 0.5])
    missing = schema.encode({"x": 5}, normalization)
    assert missing.missing.tolist() == [True, True, True, False] and missing.missing_features == ["site"]


def test_round_trip_through_a_dict(schema: FeatureSchema) -> None:
    assert FeatureSchema.from_dict(schema.to_dict()) == schema


def test_malformed_schema_is_one_line() -> None:
    with pytest.raises(SchemaError, match="duplicate features"):
        FeatureSchema.from_dict({"name": "t", "features": [{"name": "a", "kind": "binary"}] * 2})
    with pytest.raises(SchemaError, match="malformed schema"):
        FeatureSchema.from_dict({"name": "t", "features": [{"kind": "binary"}]})
