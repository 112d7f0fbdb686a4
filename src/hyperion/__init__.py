"""hyperion: a daemon that gates automated changes into git repositories."""

__version__ = "0.1.0"
