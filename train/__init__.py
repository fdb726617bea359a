"""distilcache's students: the distillation core (train-student: model, loss, targets, the loop, checkpoints) at the top,
and one sub-package per other job: probe/ (probe-features), export/ (run-dir outputs, ONNX), pretraining/ (a teacher
and espeak speech made on this machine). Imports store and extract (teacher loading, online targets); nothing below
store/extract imports it, and it never writes inside a cache (caches are made by extract and store)."""
