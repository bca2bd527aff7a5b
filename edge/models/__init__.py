"""Frame to model answers: region, preprocessing, runtime, manifests, planes, biometry, quality."""
