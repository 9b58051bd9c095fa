// backupmx console: the only script of its pages (CSP script-src 'self'). Everything works without
// it; it adds the overview's refresh every few seconds (no full reload), select-all, and a confirm
// before deleting selected messages.
'use strict';

function refresh(main) {
  const seconds = Number(main.dataset.refresh);
  if (!seconds) return;
  setInterval(async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { headers: { accept: 'text/html' }, credentials: 'same-origin', cache: 'no-store' });
      if (response.redirected || !response.ok) return location.reload();
      const next = new DOMParser().parseFromString(await response.text(), 'text/html').getElementById('live');
      const live = document.getElementById('live');
      if (next && live) live.replaceWith(next);
    } catch {
      // offline for a moment: try again at the next tick
    }
  }, seconds * 1000);
}

document.addEventListener('DOMContentLoaded', () => {
  const main = document.getElementById('main');
  if (main) refresh(main);
  for (const all of document.querySelectorAll('[data-select-all]')) {
    all.addEventListener('change', () => {
      for (const box of all.closest('form').querySelectorAll('input[type=checkbox][name=id]')) box.checked = all.checked;
    });
  }
  for (const button of document.querySelectorAll('button[data-confirm]')) {
    button.addEventListener('click', (event) => {
      if (!confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
});
