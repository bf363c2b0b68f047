"""Training a sweep: one model's state and pure steps (`train`), what each model of the batch is
(`table`), how a step runs (`stepper`; the CPU speed-ups behind one door in `cpu`), the loop and
its hooks (`sweep`, `hooks`), checkpoints and device meshes (`checkpoint`, `sharding`)."""
