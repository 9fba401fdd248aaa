"""Raw structures -> predictions with a model bundle: inputs as featurizer records, the predictor."""
