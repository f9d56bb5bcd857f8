"""What every process of the gateway sets up before it does any work.

The CLI, the listener's spawned receivers, the worker's decode processes and
any other process the project starts must agree on process-wide state that
Python does not inherit across ``spawn``/``forkserver``: the log rendering with
its identifier guard, the per-installation key of the patient hash (a receiver
hashing with another key never meets its patient's labs), the shared metrics
folder, and pydicom's value validation switched off (its warnings quote raw
dataset bytes, names and IDs included).
"""

from __future__ import annotations

import pydicom.config

from tace import metrics, phi
from tace.logging import configure_logging
from tace.settings import Settings


def quiet_dicom_validation() -> None:
    """We validate the values we use ourselves; pydicom's warnings would echo identifiers."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def init_process(settings: Settings, *, data_dir: bool = True) -> None:
    """Call first thing in every process the project starts (an initializer for pools).

    ``data_dir=False`` is for offline tools run where no gateway lives: they create
    nothing there, and hash patients with a random key that matches no other process.
    """
    configure_logging(settings.log_level, settings.log_format)
    quiet_dicom_validation()
    if data_dir:
        phi.load_hash_key(settings.data_dir)
        metrics.init(settings.data_dir)
    else:
        phi.use_ephemeral_hash_key()
