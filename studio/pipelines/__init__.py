"""Sampling pipelines (one per family) and batch sampling to folders."""

from studio.hub import register_pipeline
from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.dit import StudioDiTPipeline
from studio.pipelines.dsno import StudioDSNOPipeline
from studio.pipelines.gan import StudioGANPipeline
from studio.pipelines.record import GenerationRecord

register_pipeline(StudioDiTPipeline)
register_pipeline(StudioADMPipeline)

__all__ = ["GenerationRecord", "StudioADMPipeline", "StudioDSNOPipeline", "StudioDiTPipeline", "StudioGANPipeline", "StudioPipelineMixin", "StudioPipelineOutput"]
