"""modality-agent: the acquisition modality side of IHE Scheduled Workflow for a CT console."""

__version__ = "0.1.0"
