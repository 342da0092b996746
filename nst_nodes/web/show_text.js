// Shows what a node of this pack returns as ui.text (the metrics, the name of a saved stylizer) on the node itself:
// the editor displays images by itself, text only where an extension asks for it.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES_WITH_TEXT = new Set(["NSTQualityMetrics", "NSTVideoMetrics", "NSTSaveStylizer"]);

app.registerExtension({
  name: "nst-nodes.ShowText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === "shown");
      if (!widget) {
        widget = ComfyWidgets["STRING"](this, "shown", ["STRING", { multiline: true }], app).widget;
        widget.element.readOnly = true;
        widget.serialize = false;
      }
      widget.value = text;
      this.setSize([Math.max(this.size[0], 320), this.computeSize()[1]]);
    };
  },
});
