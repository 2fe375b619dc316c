"""Kept for the README's ``rooftrace.inference.provenance.read_provenance(path)``, which users may call:
provenance lives in :mod:`rooftrace.gis.provenance`."""

from rooftrace.gis.provenance import read_provenance

__all__ = ["read_provenance"]
