"""Clinical data in: HL7 v2 ORU over MLLP, CSV import and feature assembly."""
