"""Layer 3 interpretability: Grad-CAM, Grad-CAM++, LIME, a model-randomisation sanity check, and
Regression Concept Vectors over nuclei concepts (`python -m layer3_inference explain`)."""
