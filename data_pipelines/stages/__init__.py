"""The stage table: the names a pipeline YAML may use, each mapped to its class."""

from __future__ import annotations

from data_pipelines.dedup.exact import ExactDedup
from data_pipelines.dedup.minhash import MinhashDedup
from data_pipelines.stages.langid import LangId
from data_pipelines.stages.perplexity import Perplexity
from data_pipelines.stages.pii import Pii
from data_pipelines.stages.quality import C4, FineWeb, GopherQuality, Length
from data_pipelines.stages.repetition import GopherRepetition
from data_pipelines.stages.sft import SftFormat
from data_pipelines.stages.toxicity import Toxicity

STAGES: dict[str, type] = {
    cls.name: cls
    for cls in (LangId, GopherQuality, GopherRepetition, C4, FineWeb, Length, Pii, Toxicity, SftFormat, Perplexity, ExactDedup, MinhashDedup)
}


def build_stage(name: str, params):
    """Returns the stage object for a configured (name, params), set up and ready for documents."""
    stage = STAGES[name](params)
    stage.setup()
    return stage
