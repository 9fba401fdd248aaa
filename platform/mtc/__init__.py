"""mtc: multitask crystal graph networks, from structures to screened candidates."""

__version__ = "0.2.0"
