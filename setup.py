"""musegen_jax: a JAX/Flax training framework for music generation."""

import setuptools

setuptools.setup(
    name="musegen_jax",
    version="0.1.0",
    description="JAX/Flax training framework for music generation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["musegen_jax", "musegen_jax.*"]),
    package_data={"musegen_jax.data": ["jsb_chorales/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "note-seq>=0.0.5",
        "array-record>=0.5",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "soundfile>=0.12",
        "scipy>=1.10",
        "filelock>=3.12",  # JAX's compilation cache: eviction (compile_cache.py)
        "safetensors>=0.4",  # export --format=safetensors (Hub layout)
        "miditok>=3.0",  # data.representation="miditok"
    ],
    extras_require={
        # tensorboard: the tests read the event files with its EventAccumulator;
        # wandb: the tests run the wandb sink offline; music21: they prepare
        # a few pieces of its corpus.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorboard>=2.15",
                 "wandb>=0.16", "music21>=9"],
        # libtpu: `musegen_jax.aot` compiles for TPU topologies on any host.
        "tpu": ["libtpu>=0.0.52"],
        # corpora: prepare --input=music21:bach,palestrina,... (its bundled corpus).
        "corpora": ["music21>=9"],
        # wandb: --config.log_to=tensorboard,wandb.
        "wandb": ["wandb>=0.16"],
    },
    entry_points={
        "console_scripts": [
            "musegen-train=musegen_jax.main:run",
            "musegen-prepare=musegen_jax.prepare:run",
            "musegen-export=musegen_jax.export:run",
            "musegen-sample=musegen_jax.sample:run",
            "musegen-evaluate=musegen_jax.evaluate:run",
            "musegen-bench=musegen_jax.benchmarks.bench:run",
            "musegen-aot=musegen_jax.aot:run",
        ],
    },
)
