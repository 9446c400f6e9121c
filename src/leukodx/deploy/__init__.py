"""Making a trained model ready for the clinic, and measuring it: export, calibration and the other fits that
write into a model directory, the speed bench, a lab's commissioning (docs/architecture.md, "Layers")."""
