"""The registered student as MLflow "models from code": this file is copied into every logged model and run when the
model loads (`kr.governance.serving.log_student_model` logs it; never import it yourself).

Nothing here is unpickled: the weights are the student's own `save_classifier` file, read by
`kr.method.classifier.load_classifier` (torch.load with weights_only=True, which refuses arbitrary objects), and this
code runs only after `kr.governance.serving.fetch_verified` has matched the model's files to the audit record.

Output (what `mlflow models serve` returns under "predictions"): one row per image, the most likely class by name and
every class's probability, `{"class": "malignant", "probabilities": {"malignant": 0.88, "normal, benign": 0.12}}`.
With the parameter output="probabilities" (`predict(x, params=...)`, or "params" in the request's JSON) the bare
float32 (N, K) probability rows instead, columns in class order (what clients got before class names).
"""

from __future__ import annotations

from mlflow.pyfunc import PythonModel

import mlflow

OUTPUTS = ("classes", "probabilities")  # values of the `output` parameter; the first is the default


class StudentModel(PythonModel):
    """Raw pixel values in, class names with probabilities out (`kr.governance.serving.probabilities`)."""

    def load_context(self, context) -> None:
        """Read the weights (artifact `weights`, a `save_classifier` file) onto the CPU, in eval mode, and the class
        names (model_config `class_names`, in class index order)."""
        from kr.method.classifier import load_classifier

        self.model = load_classifier(context.artifacts["weights"]).cpu().eval()
        self.class_names = list((context.model_config or {}).get("class_names") or [])

    def predict(self, context, model_input, params=None):
        """float32 (N, C, H, W) pixel values in [0, 255] -> a list of N {"class", "probabilities"} rows; with
        params {"output": "probabilities"} the float32 numpy (N, K) probabilities. Raises ValueError for another
        output."""
        from kr.governance.serving import labelled, probabilities

        output = (params or {}).get("output") or OUTPUTS[0]
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: expected one of {', '.join(OUTPUTS)}")
        probs = probabilities(self.model, model_input)
        if output == "probabilities":
            return probs
        return labelled(probs, self.class_names or [str(k) for k in range(probs.shape[1])])  # a model without names


mlflow.models.set_model(StudentModel())
