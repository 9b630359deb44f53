"""``speca serve``: engine bundles behind HTTP, many requests batched step by step.

* ``spec``: what a bundle takes per sample and how it is sampled;
* ``protocol``: the HTTP contract as pure functions (parse, encode, errors);
* ``step_loop``: one batched call per tick over every active request, each row
  deciding full / forecast / verify for its own request;
* ``service``: the loop behind the endpoints, shared by both HTTP front ends;
* ``local``: a stdlib HTTP server in this process (tests, ``speca loadtest``);
* ``ray_app``: the Ray Serve deployment (``speca serve``; extra ``serve``);
* ``loadtest``: Poisson arrivals against a URL or a bundle, one report.

The step loop needs only the base install; Ray Serve is the ``serve`` extra.
"""
