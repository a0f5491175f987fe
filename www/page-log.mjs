// What a page in a browser test says: its console, its uncaught errors and its failed
// requests, kept for the message of a failed wait (a test that only says "timeout"
// leaves the next person guessing).

/**
 * Starts recording `page`. Uncaught errors also go to `errors`, which a test asserts empty.
 *
 * @param {import('playwright-core').Page} page
 * @param {Error[]} errors
 * @returns {string[]} the lines recorded so far, updated as the page goes on
 */
export function recordPage(page, errors) {
  const said = [];
  page.on('pageerror', (error) => {
    errors.push(error);
    said.push(`uncaught: ${error.stack ?? error.message}`);
  });
  page.on('console', (message) => said.push(`console.${message.type()}: ${message.text()} (${message.location().url})`));
  page.on('requestfailed', (request) =>
    said.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`),
  );
  page.on('crash', () => said.push('the tab crashed'));
  return said;
}
