"""The serving layer: a plan running on Ray Serve, behind one router, and kept up to date.

A plan (`tuning.Plan`) becomes one Serve application per replica group plus the router
(`app.main`). The planning packages below it decide what to run; this one runs it.

* **Router** (`ingress`, `dispatch`, `router_config`, `routing`, `groups`, `openai_api`): the
  stack's OpenAI-compatible HTTP ingress (`ingress`), configured live by one validated
  `user_config` (`router_config`). Its dispatcher (`dispatch`, plain Python) scores each
  query (RouteLLM-compatible scorers, thresholds calibrated live to the plan's shares,
  `routing`), sends it to a model of the pair or the ladder, spreads each model's queries
  over its available replica groups in the plan's shares (health, in-flight bounds,
  `groups`), and retries a failed call elsewhere.
* **Engines** (`server`, `vllm_server`, `emulated`, `engine_profiler`): the backend contract;
  the real vLLM backend (Ray Serve LLM's ``LLMServer``), the emulated engine (the stage-1
  replica model and the shared `profiling.BatchScheduler`, a declared dry run, with a live
  ``speed_factor`` to rehearse drift, and an optional prefix cache) and the engine profiler
  that measures a real engine under load. Inside a group, replicas are chosen by Serve's
  request router: power of two choices, or Ray Serve LLM's prefix-cache-affinity router
  (`affinity`, `affinity_router`: a conversation stays on the replica that holds its prefix
  until load imbalance moves it).
* **Deploy** (`deploy`, `main`, `serve_api`): check that a plan fits the live cluster, then
  deploy it through Serve's declarative REST API.
* **Guard** (`guard`): API keys, rate limits and body limits, checked before a request costs
  anything.
* **Request log and metrics** (`request_log`, `observability`, `drift`): one Parquet row per
  request answered; Ray Serve custom metrics; each group's live prediction error against the
  plan's perf DB (`drift`, read-only).
* **Replan** (`replan`): refit the workload on the request log, re-optimize, and apply the
  change with hysteresis (up, switch, down) while the service keeps running.

Layers: `app` imports `placement` (resources, fit checks, cluster auth), `tuning` (plans,
evaluation, search, the replanning decision), `profiling` (catalogs, traces, the replica
model) and `common` (errors, helpers); nothing below imports it, and only the CLI
(`boute`) sits above it. The package itself imports nothing; Ray, Serve and vLLM are
imported by the modules that use them.
"""
