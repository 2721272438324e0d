"""`photon app`: open a volume or video in the browser, ask about it, and see which tokens the
question kept, slice by slice (Gradio; the `app` extra).

PhotonApp holds what every browser session shares (the wrapped model, the loader options, the
data root) and does the work; build_ui lays it out. Each browser session keeps its own Session
(the open input and its last two questions). Requests queue one at a time: the model is one.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photon.core.errors import PhotonError
from photon.viewer import VIEW_WINDOWS, Display, display_of, enlarge, selection_overlay, slice_image

RULES = ("mean", "keep_ratio", "theta")
CSS = ".photon-answer { overflow-wrap: anywhere; } .photon-error { color: #b00020; font-weight: 600; }"
DEFAULT_UPLOAD_MB = 2048
ARRAY_CHOICES = "a NIfTI, MetaImage, NRRD, .npy/.npz, zipped DICOM series, multi-frame DICOM, image or video"


@dataclass
class Answered:
    """One question's answer and what its selection kept."""

    question: str
    answer: str
    n_visual: int
    n_kept: int
    theta: float | None
    rule: str
    layer: int | None
    prefill_s: float
    decode_s: float
    keep: np.ndarray  # (t, h, w) kept tokens of the input
    record: dict[str, Any]  # the selection record (photon.last_selection), offered as selection.json
    baseline: dict[str, Any] | None = None  # the unpruned model's answer and times


@dataclass
class Session:
    """One browser session: the open input and its questions, newest first (at most two)."""

    source: str = ""
    media: Any = None
    display: Display | None = None
    answers: list[Answered] = field(default_factory=list)


def check_upload(path: Path, max_upload_mb: int) -> Path:
    """An upload over the limit is refused by name (Gradio's max_file_size refuses it earlier in the browser)."""
    size = path.stat().st_size
    if size > max_upload_mb * 2**20:
        raise PhotonError(f"{path.name}: {size / 2**20:.0f} MB, over the {max_upload_mb} MB upload limit (--max-upload-mb)")
    return path


def one_line(exc: BaseException) -> str:
    """What the page shows for a failure: Photon's own message, or the exception's first line."""
    if isinstance(exc, PhotonError):
        return str(exc)
    print(traceback.format_exc(), file=sys.stderr)  # the server log keeps the traceback
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class PhotonApp:
    def __init__(self, loaded, options: dict[str, dict[str, Any]], *, data_root: str | Path | None = None,
                 pruner: str = "photon", note: str | None = None, max_new_tokens: int = 32):
        from photon.core.api import runtime_of

        self.loaded = loaded
        self.options = options
        self.data_root = Path(data_root).resolve() if data_root else None
        self.pruner = pruner
        self.note = note
        self.max_new_tokens = max_new_tokens
        self.temporal_patch = int(loaded.encoder.geometry.temporal_patch_size)
        runtime = runtime_of(loaded.model)
        self.mode = runtime.config.mode
        self.default_layer = runtime.layer

    # -- opening ---------------------------------------------------------------------------
    def resolve(self, text: str) -> Path:
        """A server path typed by the user: only under --data-root, never outside it."""
        if self.data_root is None:
            raise PhotonError("opening server paths is off; start `photon app --data-root DIR`, or upload the file")
        text = (text or "").strip()
        if not text:
            raise PhotonError(f"type a path under the data root {self.data_root}")
        path = (self.data_root / text).resolve()
        if path != self.data_root and self.data_root not in path.parents:
            raise PhotonError(f"{text}: outside the data root {self.data_root}; only files under it can be opened")
        if not path.exists():
            raise PhotonError(f"{text}: no such file or folder under {self.data_root}")
        return path

    def open(self, path: str | Path, name: str | None = None) -> Session:
        """Load an input as the model will see it, and the display copy of a volume (HU on the model grid)."""
        from photon.inference import load_inputs

        path = Path(path)
        media = load_inputs([path], self.options)[0]
        display_media = None
        if media.kind == "volume":
            options = {**self.options, "ct": {**self.options.get("ct", {}), "windows": ["full"]}}
            display_media = load_inputs([path], options)[0]
        return Session(source=name or path.name, media=media, display=display_of(media, display_media))

    # -- asking ----------------------------------------------------------------------------
    def current_settings(self) -> dict[str, Any]:
        """The zero-shot controls as the model is attached now (what the page starts from)."""
        from photon.core.api import runtime_of

        runtime = runtime_of(self.loaded.model)
        c = runtime.config
        rule = "keep_ratio" if c.keep_ratio is not None else "theta" if c.theta is not None else "mean"
        return {"rule": rule, "layer": runtime.layer, "keep_ratio": c.keep_ratio, "theta": c.theta}

    def apply_settings(self, rule: str, keep_ratio: float | None, theta: float | None, layer: int | None) -> None:
        """Zero-shot controls: re-attach with the rule and layer asked for, every other selection
        setting as it was (trained mode keeps its head and ignores them)."""
        if self.mode != "zero_shot":
            return
        import dataclasses

        import photon
        from photon.core.api import runtime_of

        if rule not in RULES:
            raise PhotonError(f"rule {rule!r}: expected one of {', '.join(RULES)}")
        wanted = {"rule": rule, "layer": self.default_layer if layer is None or layer < 0 else int(layer),
                  "keep_ratio": float(keep_ratio) if rule == "keep_ratio" else None,
                  "theta": float(theta) if rule == "theta" else None}
        if wanted == self.current_settings():
            return
        settings = dataclasses.asdict(runtime_of(self.loaded.model).config)
        settings.pop("mode")
        settings.update(wanted, rule="mean" if rule == "mean" else settings["rule"])
        photon.attach(self.loaded.model, mode="zero_shot", pruner=self.pruner, **settings)

    def ask(self, session: Session, question: str, *, baseline: bool = False, rule: str = "mean",
            keep_ratio: float | None = None, theta: float | None = None, layer: int | None = None) -> Session:
        from photon.core.api import runtime_of
        from photon.inference import ask
        from photon.visualize import token_grids

        if session.media is None:
            raise PhotonError(f"open an input first: upload {ARRAY_CHOICES}")
        self.apply_settings(rule, keep_ratio, theta, layer)
        asked = ask(self.loaded, session.media, question, baseline=baseline, max_new_tokens=self.max_new_tokens)
        result = asked.result
        if result.selection is None:
            raise PhotonError("the model made no selection for this input (no visual tokens reached the selection layer)")
        keep = token_grids(result.selection)[0]
        answered = Answered(
            question=question.strip(), answer=result.answer, n_visual=result.n_visual, n_kept=result.n_kept,
            theta=result.theta, rule=asked.rule, layer=runtime_of(self.loaded.model).layer,
            prefill_s=result.prefill_s, decode_s=result.decode_s, keep=keep, record=result.selection,
            baseline=None if asked.baseline is None else {"answer": asked.baseline.answer, "prefill_s": asked.baseline.prefill_s,
                                                          "decode_s": asked.baseline.decode_s})
        return Session(session.source, session.media, session.display, [answered, *session.answers][:2])

    # -- drawing ---------------------------------------------------------------------------
    def views(self, session: Session, plane: str, index: int, window: str) -> list[np.ndarray | None]:
        """[the slice, the newest question's overlay, the previous question's overlay] for one slice."""
        if session.display is None:
            return [None, None, None]
        display = session.display
        plane = plane if plane in display.planes() else display.planes()[0]
        images: list[np.ndarray | None] = [slice_image(display, plane, index, window)]
        for slot in range(2):
            if slot < len(session.answers):
                images.append(selection_overlay(display, session.answers[slot].keep, self.temporal_patch, plane, index, window))
            else:
                images.append(None)
        return [enlarge(image) for image in images]


def record_file(answered: Answered | None, slot: str) -> str | None:
    """The answer's selection record as a JSON file the page offers for download."""
    if answered is None:
        return None
    import json
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"photon-app-{slot}-"))
    path = folder / "selection.json"
    path.write_text(json.dumps({"question": answered.question, "answer": answered.answer, **answered.record}, default=float))
    return str(path)


def describe_answer(answered: Answered | None, slot: str) -> str:
    """The HTML block for one question (ids let a browser test read it)."""
    if answered is None:
        return f'<div id="photon-{slot}" class="photon-answer"><em>no question yet</em></div>'
    share = answered.n_kept / max(answered.n_visual, 1)
    theta = "-" if answered.theta is None else f"{answered.theta:.4f}"
    rows = [
        f'<b>Q:</b> <span class="photon-question">{escape(answered.question)}</span>',
        f'<b>A:</b> <span class="photon-text">{escape(answered.answer)}</span>',
        f'kept <span class="photon-kept">{answered.n_kept}</span> of <span class="photon-total">{answered.n_visual}</span> '
        f'visual tokens ({share:.1%}), theta {theta}, rule {escape(answered.rule)}, layer {answered.layer}',
        f'prefill <span class="photon-prefill">{answered.prefill_s * 1000:.1f}</span> ms, decode {answered.decode_s * 1000:.1f} ms',
    ]
    if answered.baseline:
        b = answered.baseline
        rows.append(f'unpruned: <span class="photon-baseline">{escape(b["answer"])}</span>, prefill '
                    f'{b["prefill_s"] * 1000:.1f} ms, decode {b["decode_s"] * 1000:.1f} ms '
                    f'(Photon prefill {answered.prefill_s / max(b["prefill_s"], 1e-9):.2f}x)')
    return f'<div id="photon-{slot}" class="photon-answer">' + "<br>".join(rows) + "</div>"


def escape(text: str) -> str:
    import html

    return html.escape(str(text))


def build_ui(app: PhotonApp, *, max_upload_mb: int = DEFAULT_UPLOAD_MB):
    import gradio as gr

    def fail(message: str) -> str:
        return f'<div id="photon-status" class="photon-error">{escape(message)}</div>'

    def ok(message: str) -> str:
        return f'<div id="photon-status" class="photon-ok">{escape(message)}</div>'

    def slider_for(session: Session, plane: str):
        if session.display is None:
            return gr.update(minimum=0, maximum=1, value=0)
        count = session.display.slices(plane if plane in session.display.planes() else session.display.planes()[0])
        return gr.update(minimum=0, maximum=max(count - 1, 1), value=count // 2, step=1)

    def opened(session: Session, plane: str, window: str):
        plane = plane if session.display and plane in session.display.planes() else session.display.planes()[0]
        count = session.display.slices(plane)
        images = app.views(session, plane, count // 2, window)
        shape = " x ".join(str(n) for n in session.media.frames.shape)
        message = ok(f"{session.source}: {session.media.kind}, model input {shape} (T, C, H, W)")
        return (session, message, gr.update(choices=list(session.display.planes()), value=plane), slider_for(session, plane),
                *images, describe_answer(None, "latest"), describe_answer(None, "previous"), None, None)

    nothing = tuple(gr.update() for _ in range(9))  # the outputs after session and status, unchanged

    def on_upload(file, plane, window):
        # The drop zone is emptied after each upload (the status line names what is open), ready for the next.
        if file is None:
            return (None, gr.update(), ok("no file"), *nothing)
        try:
            path = check_upload(Path(file if isinstance(file, str) else file.name), max_upload_mb)
            return (None, *opened(app.open(path, name=path.name), plane, window))
        except Exception as exc:
            return (None, gr.update(), fail(one_line(exc)), *nothing)

    def on_path(text, plane, window):
        try:
            path = app.resolve(text)
            return opened(app.open(path, name=text.strip()), plane, window)
        except Exception as exc:
            return (gr.update(), fail(one_line(exc)), *nothing)

    def on_view(session, plane, index, window):
        try:
            return tuple(app.views(session, plane, int(index or 0), window))
        except Exception as exc:
            print(one_line(exc), file=sys.stderr)
            return (gr.update(), gr.update(), gr.update())

    def on_plane(session, plane, window):
        if session.display is None:
            return (gr.update(), None, None, None)
        slider = slider_for(session, plane)
        count = session.display.slices(plane if plane in session.display.planes() else session.display.planes()[0])
        return (slider, *app.views(session, plane, count // 2, window))

    def on_ask(session, question, baseline, rule, keep_ratio, theta, layer, plane, index, window):
        try:
            session = app.ask(session, question or "", baseline=baseline, rule=rule, keep_ratio=keep_ratio,
                              theta=theta, layer=None if layer in (None, "") else int(layer))
            images = app.views(session, plane, int(index or 0), window)
            latest = session.answers[0]
            previous = session.answers[1] if len(session.answers) > 1 else None
            return (session, ok(f"answered: kept {latest.n_kept} of {latest.n_visual} visual tokens"), *images,
                    describe_answer(latest, "latest"), describe_answer(previous, "previous"),
                    record_file(latest, "latest"), record_file(previous, "previous"))
        except Exception as exc:
            return (session, fail(one_line(exc)), *(gr.update() for _ in range(7)))

    with gr.Blocks(title="Photon") as ui:
        gr.Markdown("# Photon: what the question kept\nOpen a CT volume, a multi-frame study or a video, ask a question, "
                    "and see which visual tokens the selection kept at their real footprint, slice by slice.")
        if app.note:
            gr.HTML(f'<div id="photon-note" class="photon-note"><b>{escape(app.note)}</b></div>')
        session = gr.State(Session())
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label=f"Upload {ARRAY_CHOICES} (at most {max_upload_mb} MB)", type="filepath",
                                 elem_id="photon-upload")
                with gr.Row():
                    path = gr.Textbox(label="or a path under --data-root", elem_id="photon-path",
                                      interactive=app.data_root is not None,
                                      placeholder=str(app.data_root) if app.data_root else "start with --data-root DIR")
                    open_path = gr.Button("Open", elem_id="photon-open", interactive=app.data_root is not None)
                status = gr.HTML(ok("no input yet"), elem_id="photon-status-box")
                plane = gr.Radio(["axial", "coronal", "sagittal"], value="axial", label="plane", elem_id="photon-plane")
                window = gr.Radio(list(VIEW_WINDOWS), value="full", label="CT window", elem_id="photon-window")
                index = gr.Slider(0, 1, value=0, step=1, label="slice", elem_id="photon-slice")
                question = gr.Textbox(label="question", elem_id="photon-question", placeholder="Is there a lesion in the left lung?")
                baseline = gr.Checkbox(label="also run the unpruned model (answer and time side by side)", elem_id="photon-baseline")
                zero_shot = app.mode == "zero_shot"
                start = app.current_settings()
                with gr.Accordion(f"selection ({app.mode}; controls act in zero-shot mode)", open=zero_shot):
                    rule = gr.Radio(list(RULES), value=start["rule"], label="rule", interactive=zero_shot, elem_id="photon-rule")
                    keep_ratio = gr.Slider(0.02, 1.0, value=start["keep_ratio"] or 0.25, step=0.01,
                                           label="keep ratio (rule keep_ratio)", interactive=zero_shot)
                    theta = gr.Slider(0.0, 1.0, value=start["theta"] or 0.5, step=0.01, label="theta (rule theta)",
                                      interactive=zero_shot)
                    layer = gr.Number(value=start["layer"], precision=0, label="selection layer", interactive=zero_shot)
                ask_button = gr.Button("Ask", variant="primary", elem_id="photon-ask")
            with gr.Column(scale=2):
                with gr.Row():
                    view = gr.Image(label="slice", type="numpy", format="png", elem_id="photon-view", interactive=False)
                    latest_image = gr.Image(label="kept tokens: latest question", type="numpy", format="png",
                                            elem_id="photon-overlay-latest", interactive=False)
                    previous_image = gr.Image(label="kept tokens: previous question", type="numpy", format="png",
                                              elem_id="photon-overlay-previous", interactive=False)
                gr.Markdown("Axial: rows anterior -> posterior, columns patient-left -> patient-right (the model-input "
                            "convention); coronal and sagittal put superior at the top. Tinted cells are kept tokens, "
                            "each drawn over the voxels it was made from; dimmed cells were dropped.")
                latest = gr.HTML(describe_answer(None, "latest"))
                previous = gr.HTML(describe_answer(None, "previous"))
                with gr.Row():
                    latest_record = gr.File(label="selection.json: latest question", elem_id="photon-record-latest", interactive=False)
                    previous_record = gr.File(label="selection.json: previous question", elem_id="photon-record-previous",
                                              interactive=False)

        open_outputs = [session, status, plane, index, view, latest_image, previous_image, latest, previous, latest_record, previous_record]
        upload.upload(on_upload, [upload, plane, window], [upload, *open_outputs])
        open_path.click(on_path, [path, plane, window], open_outputs)
        path.submit(on_path, [path, plane, window], open_outputs)
        images = [view, latest_image, previous_image]
        index.change(on_view, [session, plane, index, window], images)
        window.change(on_view, [session, plane, index, window], images)
        plane.change(on_plane, [session, plane, window], [index, *images])
        ask_inputs = [session, question, baseline, rule, keep_ratio, theta, layer, plane, index, window]
        ask_outputs = [session, status, *images, latest, previous, latest_record, previous_record]
        ask_button.click(on_ask, ask_inputs, ask_outputs)
        question.submit(on_ask, ask_inputs, ask_outputs)
    ui.queue(default_concurrency_limit=1)  # one model: requests wait their turn
    return ui


def serve(app: PhotonApp, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: int = DEFAULT_UPLOAD_MB,
          block: bool = True):
    """Start the server (Gradio's launch), bound to `host` only."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    ui = build_ui(app, max_upload_mb=max_upload_mb)
    ui.launch(server_name=host, server_port=port, share=False, max_file_size=f"{max_upload_mb}mb",
              prevent_thread_lock=not block, show_error=False, quiet=not block, css=CSS)
    return ui
