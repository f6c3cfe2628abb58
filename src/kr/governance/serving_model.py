"""The registered student as MLflow "models from code": this file is copied into every logged model and run when the
model loads (`kr.governance.serving.log_student_model` logs it; never import it yourself).

Nothing here is unpickled: the weights are the student's own `save_classifier` file, read by
`kr.method.classifier.load_classifier` (torch.load with weights_only=True, which refuses arbitrary objects), and this
code runs only after `kr.governance.serving.fetch_verified` has matched the model's files to the audit record.
"""

from __future__ import annotations

from mlflow.pyfunc import PythonModel

import mlflow


class StudentModel(PythonModel):
    """Raw pixel values in, class probabilities out, exactly as `kr.governance.serving.probabilities`."""

    def load_context(self, context) -> None:
        """Read the weights (artifact `weights`, a `save_classifier` file) onto the CPU, in eval mode."""
        from kr.method.classifier import load_classifier

        self.model = load_classifier(context.artifacts["weights"]).cpu().eval()

    def predict(self, context, model_input, params=None):
        """float32 (N, C, 28, 28) pixel values in [0, 255] -> float32 numpy (N, K) class probabilities."""
        from kr.governance.serving import probabilities

        return probabilities(self.model, model_input)


mlflow.models.set_model(StudentModel())
