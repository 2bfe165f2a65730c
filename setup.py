from setuptools import find_packages, setup

setup(
    name="bge_pruning",
    version="0.1.0",
    description="LLM-Shearing-style targeted structured pruning for BGE-M3 and BERT-family encoders",
    packages=find_packages(include=["bge_pruning", "bge_pruning.*"]),
    package_data={"bge_pruning.export": ["*.py"]},
    python_requires=">=3.10",
)
