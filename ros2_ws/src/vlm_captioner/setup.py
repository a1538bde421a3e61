from setuptools import find_packages, setup

package_name = "vlm_captioner"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="Token memory and captioning model to captions and compute cost (captioner "
                "node of edge_vlm).",
    license="Apache-2.0",
    # the node executable is named like the package:
    # install/vlm_captioner/lib/vlm_captioner/vlm_captioner
    entry_points={"console_scripts": ["vlm_captioner = vlm_captioner.node:main"]},
)
