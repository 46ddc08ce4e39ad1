"""Imaging Commons: a self-hostable imaging data commons (IDC API v1 and NBIA REST API)."""

__version__ = "0.1.0"
