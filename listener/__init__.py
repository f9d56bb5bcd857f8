"""DICOM in: the C-STORE SCP, durable storage of instances and series completion."""
