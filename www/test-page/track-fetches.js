// An init script (context.addInitScript): wraps fetch before any module of the page runs,
// so a client that keeps a reference to fetch is tracked too. The port of
// client-wasm/tests/web.rs's trackFetches: what the page asked and what it left running.
(() => {
  const original = window.fetch.bind(window);
  window.__fetches = [];
  window.fetch = (input, init) => {
    const request = new Request(input, init);
    const entry = { request, settled: false, abortedPending: false };
    window.__fetches.push(entry);
    request.signal.addEventListener('abort', () => {
      if (!entry.settled) entry.abortedPending = true;
    });
    const answer = original(request);
    answer.then(
      () => (entry.settled = true),
      () => (entry.settled = true),
    );
    return answer;
  };
  /** Forgets the fetches so far: the counts below start from here. */
  window.trackFetches = () => (window.__fetches = []);
  window.fetchesStillRunning = () => window.__fetches.filter((f) => !f.request.signal.aborted && !f.settled).length;
  /** The event-stream fetches since trackFetches() not aborted yet. */
  window.openStreams = () =>
    window.__fetches.filter((f) => f.request.headers.get('accept') === 'text/event-stream' && !f.request.signal.aborted).length;
  window.fetchesAbortedWhilePending = () => window.__fetches.filter((f) => f.abortedPending).length;
  window.lastAuthorization = () => window.__fetches.at(-1)?.request.headers.get('authorization') ?? null;
  window.urlsWithAuthorization = (authorization) =>
    window.__fetches.filter((f) => f.request.headers.get('authorization') === authorization).map((f) => f.request.url);
})();
