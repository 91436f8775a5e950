"""CamNet Layer 3: whole-slide heatmap inference, QuPath output and evaluation."""

from layer1_patches import __version__

# before TensorFlow loads: tf.keras must be Keras 2 (tf_keras on TF >= 2.16)
from layer1_patches.shared.kerasflavour import prefer_tf_keras

prefer_tf_keras()

__all__ = ["__version__"]
