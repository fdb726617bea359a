"""What leaves a run dir: the student for HubertModel.from_pretrained with its heads apart, the loss plot, and the ONNX
graph (export-student). Imports the core's model and store's file helpers; it never changes a checkpoint, and it only
replaces files it wrote itself."""
