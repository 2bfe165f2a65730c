"""Training and evaluation data: STS pairs, retrieval triplets, BEIR sets, collation and source mixtures."""
from .collate import PairCollator, TripletCollator
from .config import SourceSpec, dataset_shortcut, parse_data_config
from .errors import DataError
from .mixture import MixtureBatches, MixtureSource, build_train_dataloader, num_samples_in_batch
from .retrieval import Triplet, load_beir, load_triplets
from .sts import StsPair, load_sts

__all__ = [
    "StsPair", "Triplet", "DataError", "load_sts", "load_triplets", "load_beir",
    "PairCollator", "TripletCollator", "MixtureBatches", "MixtureSource", "build_train_dataloader",
    "num_samples_in_batch", "dataset_shortcut", "parse_data_config", "SourceSpec",
]
