"""Training and evaluation data: STS pairs, retrieval triplets, plain texts, BEIR sets, collation and source
mixtures."""
from .collate import PairCollator, TextCollator, TripletCollator
from .config import SourceSpec, dataset_shortcut, parse_data_config
from .errors import DataError
from .mixture import MixtureBatches, MixtureSource, build_train_dataloader, num_samples_in_batch
from .retrieval import Triplet, load_beir, load_triplets
from .sts import StsPair, load_sts
from .text import load_text_source

__all__ = [
    "StsPair", "Triplet", "DataError", "load_sts", "load_triplets", "load_beir",
    "PairCollator", "TextCollator", "TripletCollator", "load_text_source", "MixtureBatches", "MixtureSource",
    "build_train_dataloader", "num_samples_in_batch", "dataset_shortcut", "parse_data_config", "SourceSpec",
]
