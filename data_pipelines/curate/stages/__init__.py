"""The stage table: the names a pipeline YAML may use, each mapped to its class."""

from __future__ import annotations

from data_pipelines.curate.stages.exact_dedup import ExactDedup
from data_pipelines.curate.stages.minhash_dedup import MinhashDedup
from data_pipelines.curate.stages.langid import LangId
from data_pipelines.curate.stages.perplexity import Perplexity
from data_pipelines.curate.stages.pii import Pii
from data_pipelines.curate.stages.quality_classifier import QualityClassifier
from data_pipelines.curate.stages.c4 import C4
from data_pipelines.curate.stages.decontaminate import Decontaminate
from data_pipelines.curate.stages.fineweb import FineWeb
from data_pipelines.curate.stages.gopher_quality import GopherQuality
from data_pipelines.curate.stages.length import Length
from data_pipelines.curate.stages.gopher_repetition import GopherRepetition
from data_pipelines.curate.stages.sft_format import SftFormat
from data_pipelines.curate.stages.toxicity import Toxicity

STAGES: dict[str, type] = {
    cls.name: cls
    for cls in (LangId, GopherQuality, GopherRepetition, C4, FineWeb, Length, Pii, Toxicity, SftFormat, Perplexity, QualityClassifier, Decontaminate, ExactDedup, MinhashDedup)
}


def build_stage(name: str, params):
    """Returns the stage object for a configured (name, params), set up and ready for documents."""
    stage = STAGES[name](params)
    stage.setup()
    return stage
