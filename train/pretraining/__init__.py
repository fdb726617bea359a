"""What the quality bench, the demos, the benches and the tests need and cannot download: speech made here (espeak-ng
corpora with their labels, numpy-made voiced audio: speech_corpus, the one place that makes it) and a teacher pretrained
here by HuBERT's first iteration in miniature. Imports store and extract; train-student's code never imports it, and it
never touches a user's corpus or cache."""
