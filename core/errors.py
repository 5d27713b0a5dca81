"""Exception types: every user-facing error is an SdglassError with a one-line message."""


class SdglassError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class FileFormatError(SdglassError, ValueError):
    """A file that is missing, not HDF5, or lacks/garbles a required dataset."""


class OutputExistsError(SdglassError, FileExistsError):
    """Refusing to overwrite an existing output file without --force; ``path`` names it."""

    def __init__(self, path) -> None:
        super().__init__(f"refusing to overwrite existing file {path} (use --force)")
        self.path = path


class PackingError(SdglassError, ValueError):
    """The requested density cannot be packed with the minimum distance."""


class StateError(SdglassError, ValueError):
    """A spin state with NaN, wrong shape, or non-unit vectors."""


class ClusterError(SdglassError, ConnectionError):
    """A Dask scheduler that cannot be reached."""


class DeviceError(SdglassError, RuntimeError):
    """A device that torch reports but cannot compute on (e.g. a CUDA driver that fails)."""


class DisplayError(SdglassError, RuntimeError):
    """No display for the app to open its window on (Qt would abort the process)."""


class MemoryLimitError(SdglassError, MemoryError):
    """A computation that cannot fit in the memory the device has available."""
