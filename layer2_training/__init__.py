"""CamNet Layer 2: tumour/normal patch classifiers trained on Layer 1's HDF5 patches, with Horovod or tf.distribute."""

# before TensorFlow loads: tf.keras must be Keras 2 (tf_keras on TF >= 2.16)
from layer1_patches.shared.kerasflavour import prefer_tf_keras

prefer_tf_keras()

__version__ = "0.1.0"
