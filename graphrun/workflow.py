"""Editor workflows (the JSON ComfyUI's editor saves) -> API prompts, through the node specs.

The editor stores a node's constants as ``widgets_values``: one value per widget input, in the
order the inputs are declared (required, then optional). Two widgets carry a value that is no
input: the "control after generate" menu that follows a seed-like INT (``control_after_generate``,
or an INT named ``seed``/``noise_seed`` unless it says ``False``) or a COMBO that asks for it,
and the upload button of an input with an ``..._upload`` option, which the editor appends after the last
required input (so after the node's other required widgets, before the optional ones). Links are
``[id, origin node, origin slot, target node, target slot, type]`` (or objects with those names).

Editor-only nodes are resolved as the editor does when it queues a prompt: ``Reroute`` passes
its input through, ``PrimitiveNode`` leaves its value in the widget it feeds, notes vanish, a
muted node (mode 2) is left out and a bypassed node (mode 4) hands its consumers the input of
the same type. Positions, sizes and groups are the editor's business.
"""

from __future__ import annotations

from typing import Any

from graphrun.graph import GraphFormatError
from graphrun.registry import Registry
from graphrun.spec import COMBO_TYPE, InputSpec, node_spec

EDITOR_ONLY = ("Note", "MarkdownNote")
MUTED, BYPASSED = 2, 4
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_SUFFIX = "_upload"  # the option that asks ComfyUI's editor for an upload button (of any kind of file)


def is_workflow(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("nodes"), list) and "links" in document


def extra_widget_values(spec: InputSpec) -> int:
    """How many widget values beyond its own the editor stores right after this input."""
    control = spec.options.get("control_after_generate")
    if spec.type == "INT":
        return int(bool(control) if control is not None else spec.name in SEED_NAMES)
    return int(spec.type == COMBO_TYPE and bool(control))


def has_upload(spec: InputSpec) -> bool:
    return any(name.endswith(UPLOAD_SUFFIX) and bool(value) for name, value in spec.options.items())


def is_widget(spec: InputSpec) -> bool:
    return spec.accepts_constant and not spec.options.get("forceInput")


def widget_layout(inputs: dict[str, InputSpec]) -> list[tuple[str | None, int]]:
    """The editor's widget order, as (input name, or None for the upload button; values it stores): the
    required inputs, one upload button if any of them asks for one (the editor adds it as the last
    required input), then the optional inputs."""
    required = [(name, spec) for name, spec in inputs.items() if spec.required]
    upload: list[tuple[str | None, int]] = [(None, 1)] if any(has_upload(spec) for _, spec in required) else []
    optional = [(name, spec) for name, spec in inputs.items() if not spec.required]
    widgets = [(name, 1 + extra_widget_values(spec)) for name, spec in required if is_widget(spec)]
    return widgets + upload + [(name, 1 + extra_widget_values(spec)) for name, spec in optional if is_widget(spec)]


def widget_inputs(inputs: dict[str, InputSpec], values: Any) -> dict[str, Any]:
    """Input name -> value for a node's ``widgets_values`` (a list, or a dict by name)."""
    if isinstance(values, dict):
        return {name: values[name] for name, spec in inputs.items() if is_widget(spec) and name in values}
    values = values if isinstance(values, list) else []
    found: dict[str, Any] = {}
    position = 0
    for name, width in widget_layout(inputs):
        if name is not None:
            if position >= len(values):
                break  # a workflow from an older version of the node: validation names what is missing
            found[name] = values[position]
        position += width
    return found


def _types_agree(first: Any, second: Any) -> bool:
    """Whether two editor socket types can meet: "*" (or none given) takes anything, "A,B" either."""
    if not isinstance(first, str) or not isinstance(second, str) or "*" in (first, second) or "" in (first, second):
        return True
    return bool(set(first.split(",")) & set(second.split(",")))


def _links(workflow: dict[str, Any], nodes: dict[str, dict[str, Any]], name: str) -> dict[Any, dict[str, Any]]:
    """The link table by id, checked against the nodes: ids unique, both ends present, slots in range, types
    agreeing, and every input's link going to that input (the editor keeps all of these; a file that breaks
    one would feed a node the wrong value). A link whose target node is gone feeds nothing and is ignored."""
    links: dict[Any, dict[str, Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            link = dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link, strict=False))
        if not isinstance(link, dict) or not isinstance(link.get("id"), (int, str)):
            raise GraphFormatError(f"{name}: a link must be [id, origin, slot, target, slot, type], got {link!r:.100}")
        if link["id"] in links:
            raise GraphFormatError(
                f"{name}: two links have the id {link['id']!r}; save the workflow again from the editor"
            )
        links[link["id"]] = link
    for link_id, link in links.items():
        target = nodes.get(str(link.get("target_id")))
        if target is None:
            continue
        origin = nodes.get(str(link.get("origin_id")))
        if origin is None:
            raise GraphFormatError(
                f"{name}: link {link_id!r} comes from node {link.get('origin_id')!r}, which the "
                "workflow lacks; reconnect that input in the editor"
            )
        for end, node, sockets in (("origin", origin, "outputs"), ("target", target, "inputs")):
            slot, listed = link.get(f"{end}_slot"), node.get(sockets)
            if (
                not isinstance(slot, int)
                or isinstance(slot, bool)
                or slot < 0
                or (isinstance(listed, list) and slot >= len(listed))
            ):
                raise GraphFormatError(
                    f"{name}: link {link_id!r} uses {sockets[:-1]} {slot!r} of node {node['id']!r} "
                    f"({node['type']}), which has no such slot; reconnect it in the editor"
                )
            socket = listed[slot] if isinstance(listed, list) else None
            if isinstance(socket, dict) and not _types_agree(socket.get("type"), link.get("type")):
                raise GraphFormatError(
                    f"{name}: link {link_id!r} carries {link.get('type')!r} but {sockets[:-1]} {slot} "
                    f"of node {node['id']!r} ({node['type']}) is {socket.get('type')!r}; "
                    "reconnect it in the editor"
                )
    for node_id, node in nodes.items():
        for slot, socket in enumerate(node.get("inputs") or []):
            link_id = socket.get("link") if isinstance(socket, dict) else None
            if link_id is None:
                continue
            link = links.get(link_id) if isinstance(link_id, (int, str)) else None
            if link is None or str(link.get("target_id")) != node_id or link.get("target_slot") != slot:
                raise GraphFormatError(
                    f"{name}: input {slot} of node {node['id']!r} ({node['type']}) names link "
                    f"{link_id!r}, which does not end there; reconnect it in the editor"
                )
    return links


def _check_widget_count(node: dict[str, Any], inputs: dict[str, InputSpec], name: str) -> None:
    """Refuse more widget values than the node has widgets: they would be read into the wrong inputs."""
    values = node.get("widgets_values")
    most = sum(width for _, width in widget_layout(inputs))
    if isinstance(values, list) and len(values) > most:
        raise GraphFormatError(
            f"{name}: node {node['id']!r} ({node['type']}) has {len(values)} widget values but "
            f"takes at most {most}; the workflow is from another version of the node, so set "
            "the node up again in the editor"
        )


def workflow_to_prompt(workflow: dict[str, Any], registry: Registry, name: str = "<workflow>") -> dict[str, Any]:
    """The API prompt the editor would queue for ``workflow``."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise GraphFormatError(f"{name}: subgraphs are not supported; unpack them in the editor first")
    nodes: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("type"), str)
            or not isinstance(node.get("id"), (int, str))
        ):
            raise GraphFormatError(f"{name}: every node needs an 'id' and a string 'type', got {node!r:.100}")
        if str(node["id"]) in nodes:
            raise GraphFormatError(
                f"{name}: two nodes have the id {node['id']!r}; save the workflow again from the editor"
            )
        nodes[str(node["id"])] = node
    links = _links(workflow, nodes, name)

    def source_of(link_id: Any) -> tuple[str, int] | None:
        """The real node output a link carries, through reroutes and bypassed nodes; None for none."""
        seen = set()
        while link_id is not None and link_id not in seen:
            seen.add(link_id)
            link = links.get(link_id)
            if link is None:
                return None
            origin_id, slot = str(link["origin_id"]), link["origin_slot"]
            origin = nodes[origin_id]  # _links checked that it exists
            inputs = origin.get("inputs") or []
            if origin["type"] == "Reroute":
                link_id = inputs[0].get("link") if inputs else None
            elif origin["type"] == "PrimitiveNode" or origin.get("mode") == MUTED:
                return None
            elif origin.get("mode") == BYPASSED:
                same_slot = [inputs[slot]] if isinstance(slot, int) and slot < len(inputs) else []
                matching = [i for i in same_slot + inputs if i.get("type") == link.get("type")]
                link_id = matching[0].get("link") if matching else None
            else:
                return origin_id, slot
        return None

    prompt: dict[str, Any] = {}
    for node_id, node in sorted(nodes.items(), key=lambda item: (len(item[0]), item[0])):
        kind = node["type"]
        if kind in EDITOR_ONLY or kind in ("Reroute", "PrimitiveNode") or node.get("mode") in (MUTED, BYPASSED):
            continue
        node_class = registry.classes.get(kind)
        constants: dict[str, Any] = {}
        if node_class:
            spec_inputs = node_spec(node_class).inputs
            _check_widget_count(node, spec_inputs, name)
            constants = widget_inputs(spec_inputs, node.get("widgets_values"))
        inputs: dict[str, Any] = {
            key: {"__value__": value} if isinstance(value, list) else value for key, value in constants.items()
        }  # a bare pair would read as a link
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("link") is not None and isinstance(slot.get("name"), str):
                source = source_of(slot["link"])
                if source is not None:
                    inputs[slot["name"]] = [source[0], source[1]]
        entry: dict[str, Any] = {"class_type": kind, "inputs": inputs}
        if isinstance(node.get("title"), str):
            entry["_meta"] = {"title": node["title"]}
        prompt[node_id] = entry
    if not prompt:
        raise GraphFormatError(f"{name}: the workflow has no node to run (every node is muted, bypassed or a note)")
    return prompt
