// Add the chapter's jupytext source (.py) to the theme's download menu (see _ext/py_sources.py).
document.addEventListener("DOMContentLoaded", function () {
  var meta = document.querySelector('meta[name="py-source"]');
  var ipynb = document.querySelector(".dropdown-download-buttons a.btn-download-source-button");
  if (!meta || !ipynb) return;
  var item = ipynb.closest("li").cloneNode(true);
  var link = item.querySelector("a");
  link.setAttribute("href", meta.getAttribute("content"));
  link.setAttribute("title", "Download the jupytext source (.py)");
  link.classList.add("btn-download-py-button");
  item.querySelector(".btn__text-container").textContent = ".py";
  ipynb.closest("li").after(item);
});
