"""The installed retune version: a core module, so that reports and run cards can record it without importing the
package root (whose lazy attributes reach the API, the top layer)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("retune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
