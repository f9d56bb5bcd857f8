"""CLDCA in pure PyTorch: network, preprocessing, training, evaluation, inference."""
