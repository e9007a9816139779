"""Artifacts: the typed records of ``<run>/export/manifest.json`` and how every stage makes them.

``record`` (:class:`Artifact` and its input/output/comparison parts), ``manifest`` (reading and writing the
manifest, file names), ``settings`` (one line of how a file was made), ``stage`` (the one builder, accuracy gate,
source lookup and ``finish_stage``).
Export, quantize, TensorRT, bench, the report and the CLI all speak :class:`Artifact`.
"""

from kdeploy.artifacts.manifest import Manifest, artifact_path, find, read_manifest, upsert
from kdeploy.artifacts.record import Artifact, Comparison, InputSpec, OutputSpec
from kdeploy.artifacts.settings import how_made
from kdeploy.artifacts.stage import (
    accuracy_gate,
    build_artifact,
    describe,
    failures,
    finish_stage,
    source_artifact,
)

__all__ = [
    "Artifact",
    "Comparison",
    "InputSpec",
    "Manifest",
    "OutputSpec",
    "accuracy_gate",
    "artifact_path",
    "build_artifact",
    "describe",
    "failures",
    "find",
    "finish_stage",
    "how_made",
    "read_manifest",
    "source_artifact",
    "upsert",
]
