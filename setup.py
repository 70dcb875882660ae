"""maxlm: curate, pretrain, fine-tune, align, evaluate and export Llama-family models in JAX."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "sentencepiece>=0.2",
    "chex>=0.1.90",
    "numpy>=1.26",
    "pyyaml>=6",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    "safetensors>=0.4",
    "zstandard>=0.22",
    "pyarrow>=15",
    "array_record>=0.8",
    "py3langid>=0.4",
]

EXTRAS = {
    # torch is pinned to the CPU build that is served for this platform; parity and peer benchmarks only.
    # datatrove: the rule filters' parity tests call its filters (internals: pinned); spacy is its English tokenizer.
    # lm-eval: the decontaminate stage's n-grams are compared with its janitor module, and `--model maxlm` with its `hf` model (internals: pinned).
    # wandb / mlflow-skinny: the train.trackers tests read an offline W&B run and an MLflow file store back.
    # peft: LoRA exports are loaded by PeftModel.from_pretrained in the tests.
    # bitsandbytes: QLoRA's own nf4 (on CPU through torch); the nf4 base is compared with its quantize_4bit.
    # faust-cchardet / python-magic: datatrove's WarcReader imports them; the WARC test reads its crawl with it.
    # pytest-xdist: the README's test command runs the suite on two workers (-n 2: CI's two cores).
    # trl: the preference/reward loss tests compare against TRL's own loss methods (private API: pinned).
    "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "transformers>=5.0", "tokenizers>=0.20", "ray>=2.9", "trl==1.16.0", "rouge-score>=0.1.2",
             "datatrove==0.10.1", "spacy==3.8.18", "lm-eval==0.4.13", "wandb==0.31.0", "mlflow-skinny==3.18.0", "peft==0.21.2", "bitsandbytes==0.50.2",
             "warcio>=1.7", "trafilatura>=2.0", "lxml_html_clean>=0.4", "charset-normalizer>=3", "faust-cchardet>=2.1", "python-magic>=0.4"],
    "hf": ["transformers>=5.0", "tokenizers>=0.20"],
    "seqio": ["seqio>=0.0.19"],
    "gpu": ["jax[cuda12]>=0.10"],
    "tpu": ["jax[tpu]>=0.10"],
    # `maxlm compile`: libtpu's compiler targets abstract TPU devices on any machine (pinned: libtpu matches one jax).
    "aot": ["jax[tpu]==0.10.2"],
    "ray": ["ray>=2.9"],
    # WARC input for `maxlm curate` (warcio) with HTML-to-text extraction (trafilatura; its justext needs lxml's html cleaner).
    "warc": ["warcio>=1.7", "trafilatura>=2.0", "lxml_html_clean>=0.4", "charset-normalizer>=3"],
    "synth": ["rouge-score>=0.1.2"],  # ROUGE-L novelty filter of `maxlm synth self-instruct`
    # `maxlm eval harness`, `--model maxlm` and train.eval_harness: MaxlmLM subclasses its TemplateLM (internals: pinned).
    "eval": ["lm-eval==0.4.13"],
    # train.trackers sinks (about 100 MB together). mlflow-skinny: the tracking client without the server's Flask/SQL stack.
    "wandb": ["wandb==0.31.0"],
    "mlflow": ["mlflow-skinny==3.18.0"],
    # tools/launch/skypilot.py's test reads its task YAML back with sky.Task.from_yaml. Not in [test]: SkyPilot pulls
    # many cloud clients and pins click below what spacy / wandb need; the test skips without it.
    "skypilot": ["skypilot==0.14.1"],
}

setup(
    name="maxlm",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else __doc__,
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["maxlm", "maxlm.*", "data_pipelines", "data_pipelines.*"]),
    package_data={"data_pipelines": ["**/*.txt", "**/*.json"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["maxlm=maxlm.cli:main"]},
)
