"""Evaluating a sweep: held-out metrics and the estimates (`evaluate`), the dimension rule and
its bootstrap (`dimension`), the linear baselines (`baselines`, `lds`), the reliable-variance
spectrum (`spectrum`) and layer decoding (`decoding`)."""
