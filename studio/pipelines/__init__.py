"""Sampling pipelines (one per family) and batch sampling to folders."""

from studio.hub import register_pipeline
from studio.pipelines.adm import StudioADMPipeline
from studio.pipelines.base import StudioPipelineMixin, StudioPipelineOutput
from studio.pipelines.controlnet import StudioControlNetPipeline
from studio.pipelines.dit import StudioDiTPipeline
from studio.pipelines.dsno import StudioDSNOPipeline
from studio.pipelines.gan import StudioGANPipeline
from studio.pipelines.record import GenerationRecord
from studio.pipelines.score import StudioScorePipeline

register_pipeline(StudioDiTPipeline)
register_pipeline(StudioADMPipeline)
register_pipeline(StudioControlNetPipeline)
register_pipeline(StudioScorePipeline)

__all__ = ["GenerationRecord", "StudioADMPipeline", "StudioControlNetPipeline", "StudioDSNOPipeline", "StudioDiTPipeline", "StudioGANPipeline", "StudioPipelineMixin", "StudioPipelineOutput",
           "StudioScorePipeline"]
