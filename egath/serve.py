"""`egath serve`: a search page and a JSON API over an index, the index and its encoders loaded once.

    GET  /                                    the page: a text box, an image upload, a grid of results
    GET  /api/info                            what the index holds: method, bits, size, modalities, labels
    GET  /api/search?text=red+circle&k=20     a text query (same_modality=1: rank the texts)
    GET  /api/search?item=17&modality=image   an item of the index as the query (its stored code)
    POST /api/search?k=20                     an image query: the request body is the image file
    GET  /thumbnails/{row}                    a thumbnail of the image of the index's row `row`

Answers are egath.search.SearchResult as JSON, each hit with its thumbnail's address; errors are
{"error": message} with a 4xx status. Only files that the index lists are read: a thumbnail is
asked for by row number, so no path from a request reaches the filesystem. An upload larger than
`max_upload_bytes` is refused (413) before it is read whole, a body that is not an image too
(415). Each query is logged in one line with its time.
"""
from __future__ import annotations

import functools
import io
import logging
import socket
import time
from pathlib import Path

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from egath.search import SearchError, load_index, search

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("web") / "search.html"
THUMBNAIL_PIXELS = 256  # longest side


def create_app(index_path, *, k: int = 20, max_upload_bytes: int = 10_000_000, device: str = "cpu") -> Starlette:
    """The web application over one index; the index, its encoders and (where the index can be
    searched by image) the CLIP model are loaded here, before the first request."""
    index = load_index(index_path)
    # load the encoders (and CLIP, for uploads) and the ranking kernel now, not in the first query
    search(index, item=(index.modalities[0], 0), k=1, device=device)
    index.query_encoder(device).clip()
    info = {"index": str(index.path), "n": len(index), "modalities": list(index.modalities), "k": k,
            "max_upload_bytes": max_upload_bytes, "label_names": index.label_names,
            **{key: index.meta[key] for key in ("method", "bits", "dataset", "collection",
                                                 "collection_kind", "text_input")}}

    async def answer(request: Request, **query) -> JSONResponse:
        params = request.query_params
        try:
            wanted = int(params.get("k", k))
        except ValueError:
            raise HTTPException(400, f"k must be a whole number, got {params['k']!r}")
        options = dict(k=wanted, same_modality=params.get("same_modality", "") in ("1", "true"), device=device)
        start = time.perf_counter()
        try:
            result = await run_in_threadpool(search, index, **query, **options)
        except SearchError as e:
            raise HTTPException(400, str(e))
        ms = 1000 * (time.perf_counter() - start)
        log.info("query %s: %d %ss in %.1f ms", _describe(result.query), len(result.hits), result.searched, ms)
        body = result.to_dict()
        for hit in body["hits"]:
            hit["thumbnail"] = f"/thumbnails/{hit['row']}" if hit["image"] else None
        return JSONResponse({**body, "milliseconds": round(ms, 2)})

    async def search_get(request: Request) -> JSONResponse:
        params = request.query_params
        if "text" in params:
            return await answer(request, text=params["text"])
        if "item" in params:
            try:
                row = int(params["item"])
            except ValueError:
                raise HTTPException(400, f"item must be a row number, got {params['item']!r}")
            return await answer(request, item=(params.get("modality", "image"), row))
        raise HTTPException(400, "give text=... or item=ROW&modality=image|text (or POST an image)")

    async def search_post(request: Request) -> JSONResponse:
        body = await _bounded_body(request, max_upload_bytes)
        _check_image(body)
        return await answer(request, image=io.BytesIO(body))

    @functools.lru_cache(maxsize=4096)
    def thumbnail(row: int) -> bytes:
        from egath.features import open_image

        im = open_image(index.image_paths[row])
        im.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        out = io.BytesIO()
        im.save(out, "PNG" if max(im.size) <= 64 else "JPEG")  # small drawings stay sharp
        return out.getvalue()

    async def thumbnails(request: Request) -> Response:
        row = request.path_params["row"]
        if not 0 <= row < len(index) or not index.image_paths[row]:
            raise HTTPException(404, f"the index has no image at row {row}")
        try:
            data = await run_in_threadpool(thumbnail, row)
        except (OSError, ValueError) as e:  # the file is gone or unreadable since indexing
            raise HTTPException(404, f"the image of row {row} cannot be read: {e}")
        return Response(data, media_type="image/png" if data.startswith(b"\x89PNG") else "image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    async def page(request: Request) -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    async def api_info(request: Request) -> JSONResponse:
        return JSONResponse(info)

    async def error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(routes=[Route("/", page), Route("/api/info", api_info),
                             Route("/api/search", search_get, methods=["GET"]),
                             Route("/api/search", search_post, methods=["POST"]),
                             Route("/thumbnails/{row:int}", thumbnails)],
                     exception_handlers={HTTPException: error})


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    too_large = HTTPException(413, f"the upload is larger than {limit:,} bytes (egath serve --max-upload-mb)")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    if not body:
        raise HTTPException(400, "POST an image file as the request body")
    return bytes(body)


def _check_image(body: bytes) -> None:
    try:
        with Image.open(io.BytesIO(body)) as im:
            im.verify()
    except Exception:  # PIL raises assorted types for what it cannot read
        raise HTTPException(415, f"the upload ({len(body):,} bytes) is not an image that can be read: "
                                 "send a JPEG, PNG or another common image format")


def _describe(query: dict) -> str:
    if "text" in query:
        return f"text {query['text']!r}"
    if "item" in query:
        return f"{query['modality']} of row {query['item']}"
    return f"image {query['image']!r}"


def serve(index_path, *, host: str = "127.0.0.1", port: int = 8000, k: int = 20,
          max_upload_bytes: int = 10_000_000, device: str = "cpu") -> None:
    """Serve the page and API until interrupted; port 0 takes any free port (the log names it)."""
    import uvicorn

    app = create_app(index_path, k=k, max_upload_bytes=max_upload_bytes, device=device)
    ipv6 = ":" in host
    # made as a TCP socket by name: asyncio then sets TCP_NODELAY on each connection, else a kept-alive
    # connection waits 40 ms (a delayed acknowledgement) between an answer's head and its body
    listener = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(2048)
    shown, port = listener.getsockname()[:2]
    # log_config None: uvicorn's loggers go through egath's logging; its access log is off, as
    # the app writes its own line per query
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    log.info("serving %s at http://%s:%d/ (Ctrl-C stops)", index_path, f"[{shown}]" if ipv6 else shown, port)
    server.run(sockets=[listener])
