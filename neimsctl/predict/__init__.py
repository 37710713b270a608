"""L3: prediction: model loading, chunked prediction of many molecules, the predict pipeline."""
