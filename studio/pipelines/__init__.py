"""Sampling pipelines (one per family) and batch sampling to folders.

Each pipeline class registers itself with `studio.hub.register_pipeline`, so importing this package
makes every studio checkpoint loadable by `studio.hub.load_pipeline`.
"""

from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.controlnet import StudioControlNetPipeline
from studio.pipelines.dit import StudioDiTPipeline
from studio.pipelines.dsno import StudioDSNOPipeline
from studio.pipelines.gan import StudioGANPipeline
from studio.pipelines.record import GenerationRecord
from studio.pipelines.score import StudioScorePipeline

__all__ = [
    "GenerationRecord",
    "StudioADMPipeline",
    "StudioControlNetPipeline",
    "StudioDSNOPipeline",
    "StudioDiTPipeline",
    "StudioGANPipeline",
    "StudioPipelineMixin",
    "StudioPipelineOutput",
    "StudioScorePipeline",
]
