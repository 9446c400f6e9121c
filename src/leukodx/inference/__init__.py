"""Inference: the analysis pipeline shared by the CLI and the web app, cell instances, Grad-CAM, ONNX."""
