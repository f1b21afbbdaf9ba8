from karpalign.layers.region_embedding import RegionEmbedding
from karpalign.layers.brnn_encoder import BRNNEncoder

__all__ = ["RegionEmbedding", "BRNNEncoder"]
