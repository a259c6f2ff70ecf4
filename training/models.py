# TrainingRun and DatasetSnapshot arrive with the training pipeline (DESIGN.md, "Core data").
