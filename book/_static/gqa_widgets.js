// Loaded before the widget renderer (@jupyter-widgets/html-manager's embed-amd.js) on each page with widgets.
(function () {
  // The renderer's bundles find their icon fonts beside their module's address, which requirejs makes from its
  // baseUrl and paths: all of them in _static/widgets/, where the build copies the fonts. (A global `require`
  // set before require.js loads is its configuration.)
  const widgets = new URL("widgets/", document.currentScript.src).href;
  window.require = {baseUrl: widgets, paths: {"@jupyter-widgets/html-manager/dist": ".", "@jupyter-widgets": "."}};
  window.__jupyter_widgets_assets_path__ = widgets;
  // ipywidgets 8 typesets a widget's label with MathJax 2's call, MathJax.Hub.Queue(["Typeset", MathJax.Hub, el]).
  // The book serves MathJax 4, which has no Hub: answer that call with MathJax 4's own typesetting.
  function typesetLikeMathJax2() {
    const mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (...commands) {
        for (const c of commands) {
          if (Array.isArray(c) && c[0] === "Typeset" && c[2] && mj.startup && mj.startup.promise) {
            mj.startup.promise.then(() => mj.typesetPromise([c[2]])).catch(() => null);
          }
        }
      },
    };
  }
  document.addEventListener("DOMContentLoaded", typesetLikeMathJax2);
})();
