// Live validation for the flag editor: while the definition is edited, the engine's check runs on
// the node (POST …/check, with this session's CSRF token) and its problems are listed under the
// editor, each at its JSON path. Nothing is saved; "Review changes" still checks again. Only
// textContent is written, never HTML, and the page works without this file.
'use strict';
(function () {
  const editor = document.querySelector('textarea[data-check]');
  const out = document.getElementById('live-problems');
  if (!editor || !out) return;
  const form = editor.form;
  const csrf = form && form.querySelector('input[name="csrf"]');
  if (!csrf) return;
  let timer = null;
  let sent = 0;
  const show = (answer) => {
    out.replaceChildren();
    const status = document.createElement('p');
    if (answer.problems.length === 0) {
      status.textContent = 'The engine accepts this definition.';
      out.append(status);
      return;
    }
    status.textContent = `The engine refuses this definition (${answer.problems.length}):`;
    const list = document.createElement('ul');
    list.className = 'problems';
    for (const problem of answer.problems) {
      const item = document.createElement('li');
      const path = document.createElement('code');
      path.textContent = problem.path;
      item.append(path, ' ', problem.message);
      list.append(item);
    }
    out.append(status, list);
  };
  const check = async () => {
    const mine = ++sent;
    const body = new URLSearchParams({ csrf: csrf.value, definition: editor.value });
    try {
      const res = await fetch(editor.dataset.check, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body,
      });
      if (!res.ok || mine !== sent) return;
      show(await res.json());
    } catch (_) {
      // Offline or signed out: the review step still checks.
    }
  };
  editor.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
})();
