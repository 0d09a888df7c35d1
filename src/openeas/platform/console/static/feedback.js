// The page's two message lines: #error (the API's error, as text) and #notice.

const $ = (id) => document.getElementById(id);

export function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

export function showNotice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

let changed = () => {};

// What to run after each action (the app's refresh of the page, which shows its effect).
export function afterActions(fn) {
  changed = fn;
}

// Await an action's API call and show its outcome (describe(answer), or the error);
// then refresh the page.  True when the call succeeded.
export async function act(promise, describe) {
  try {
    const answer = await promise;
    showError(null);
    showNotice(describe(answer));
    return true;
  } catch (error) {
    showNotice(null);
    showError(error);
    return false;
  } finally {
    changed();
  }
}
