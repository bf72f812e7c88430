"""The live side of a site: an HTTP scoring service (`feddymem serve`), a folder watcher
(`feddymem watch`) and an operator's page, scoring with a model file that the federation
replaces in place (hot swap).

Modules: `decode` (request bytes -> pixels, with caps), `scoring` (a batch of pixels -> scores
and maps, pure), `models` (the model serving now, swapped when its file changes), `batcher`
(requests that arrive together scored as one batch, off the event loop), `watch` (a folder of
new images scored once each), `feed` (the last decisions, for the page), `metrics`
(Prometheus), `app` (the FastAPI app), `settings` (the validated options).
"""
